"""payment_service: card payments through a simulated processor, and refunds."""
