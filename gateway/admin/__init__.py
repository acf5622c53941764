"""The admin API's routes and the ``gateway keys`` command line; the runtime keys and
tenants themselves are part of the live state (:mod:`gateway.control.apikeys`)."""
