"""Caption outputs (issue 19): a session's captions sent on to where the audience is (YouTube Live, Zoom, OBS,
webhooks). base.py is the interface, one module per kind, manager.py runs them, api.py is the owner's API."""
