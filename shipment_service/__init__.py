"""shipment_service: shipments, their tracking numbers and status history."""
