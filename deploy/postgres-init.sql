-- One database per service (docker-compose's PostgreSQL runs this once, on an empty volume).
CREATE DATABASE auth_service;
CREATE DATABASE order_service;
CREATE DATABASE inventory_service;
CREATE DATABASE payment_service;
CREATE DATABASE carrier_service;
CREATE DATABASE shipment_service;
CREATE DATABASE saga_orchestrator;
