"""The server: preparing, listeners, one process or a supervisor and its workers, reload."""
