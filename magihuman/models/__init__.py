"""Model definitions. Each module builds its layers through an injected ``operations`` namespace."""
