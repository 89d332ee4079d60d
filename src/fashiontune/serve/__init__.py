"""`fashiontune serve INDEX [INDEX2]`: a FastAPI app over one or two index directories (index/build.py):
JSON API + one self-contained HTML page (static/index.html, no external resource)."""
