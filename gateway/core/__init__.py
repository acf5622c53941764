"""The shared kernel both paths import: records, the key names, the Redis store and locks,
the config, ids, the principal of a request and the one access rule, redaction, errors,
the text layer, the review-item store and the statistics. It imports nothing else of Flywheel."""
