"""Security: encryption at rest (``crypto``) and the hash-chained audit log (``audit``).
Identities, tokens, roles and quotas are to come (see the security issue)."""
