"""Tests of the customer-service command through its real entry point."""
