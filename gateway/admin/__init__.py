"""The admin API's routes, runtime API keys and tenants, and their command line."""
