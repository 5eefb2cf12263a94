"""Security: encryption at rest (``crypto``). Identities, tokens, roles and the audit log
are to come (see the security issue)."""
