"""For operators: the admin API and its OpenAPI contract, the dashboard, stats, metrics, doctor,
the Safari ITP checks and the operator commands.
"""
