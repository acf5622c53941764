"""Online path: the OpenAI-compatible chat gateway (see ARCHITECTURE.md).

Everything in this package is on a request's critical path or serves it. Build an
app with :func:`gateway.app.create_app`; importing a module does no work.
"""
