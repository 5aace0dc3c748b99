"""What several test modules share: recording steps, the OpenAPI spec adapter, fake servers."""
