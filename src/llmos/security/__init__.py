"""Security: who may do what, and the services that guard what the store holds.

``rbac`` (roles, scopes and the check every service makes), ``identity`` (users, teams,
memberships, quotas, the first start's administrator), ``tokens`` (API tokens and turning
one into a principal), ``throttle`` (slowing failed authentications), ``paths`` (host files
a principal may have read), ``artifacts`` (the artifact service, role-checked), ``crypto``
(encryption at rest: the cipher handed to the artifact store) and ``audit`` (the
HMAC-chained audit log). Imports only the store, the config and the shared errors."""
