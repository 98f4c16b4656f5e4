"""HTTP: the routes reading the snapshots (`routes`), the hypercorn server (`server`),
/health and /top5 answers (`health`), the live page's event stream (`stream`), its figures
(`charts`) and the page itself (package data, `page/index.html`).
"""
