"""The web dashboard: static assets only (HTML, CSS, JavaScript, a vendored charting
library), served by the API at ``/`` and ``/assets/...`` (``api/web.py``).

This room imports nothing of llmos and holds no Python logic: every figure the pages show
comes from the REST API, fetched by the browser with the user's own token (kept in
``sessionStorage``, sent as ``Authorization: Bearer``, never put in a URL), so the pages
see exactly what the API lets that token see — same roles, same team visibility.

- ``static/index.html``: the one page; hash routes (``#/jobs/12``) pick what it shows.
- ``static/app.css``: the layout, from a phone's width up.
- ``static/js/``: ES modules — ``api.js`` (requests, token), ``dom.js`` (elements built
  with ``textContent`` only: a string from the API is never parsed as HTML), ``charts.js``
  (uPlot wrappers), ``lineage.js`` (a layered graph drawn as SVG), ``pages/*.js``.
- ``static/vendor/``: uPlot (MIT, its licence beside it), served by llmos itself: no CDN.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
