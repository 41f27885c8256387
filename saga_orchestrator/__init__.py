"""saga_orchestrator: placeCustomerOrder as an event-sourced, compensating saga over the fleet's services."""
