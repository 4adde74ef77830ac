"""The `abrouter` command: a thin shell over the router and analysis packages."""
