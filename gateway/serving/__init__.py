"""The request path: the public routes, chat completions (admission, the upstream call, the
stream relay, shadow and judge), feedback, request bodies and validation, upstream
replicas, rate limits, spend and budgets, the interaction log and the metrics."""
