"""Eureka-REST-protocol service registry kept in memory, for local and test runs."""
