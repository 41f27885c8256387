"""auth_service: users, login, JWT issuing, token validation for the gateway, and the JWKS."""
