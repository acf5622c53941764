"""Operations on stored data: the archive (writer and reader, the windowed queries),
forgetting a user, and moving keys to a Redis Cluster."""
