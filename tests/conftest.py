"""Suite-wide settings: unit tests need nothing; integration tests get a real stack."""
