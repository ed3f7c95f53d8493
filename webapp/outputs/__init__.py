"""Caption outputs: where a session's captions go besides our own pages (one module per kind)."""
