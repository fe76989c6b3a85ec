"""What guards the doors: TLS contexts and authentication/authorization checks, wrapped by each transport."""
