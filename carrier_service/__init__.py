"""carrier_service: carriers, their coverage and prices, and the carrier assigned to each order."""
