"""Online path: the OpenAI-compatible chat gateway (see docs/architecture.md).

``core/`` is the kernel both paths share; ``serving/`` the request path; ``control/`` the
live state and decisions; ``admin/`` and ``console/`` the operators' surfaces; ``ops/``
the archive, forget and migrations. :mod:`gateway.app` composes them: build an app with
:func:`gateway.app.create_app`; importing a module does no work.
"""
