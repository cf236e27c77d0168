"""What every gRPC server of the platform shares (extra `server`): the handler wrapper that maps errors to
statuses and answers malformed requests with INVALID_ARGUMENT."""
