# frozen_string_literal: true

# Unicorn for examples/unicorn: 4 worker processes forked from a preloaded master, each
# publishing through the Sidecar::Client the master made (it reconnects in each worker).
app_socket = ENV.fetch("APP_SOCKET", "tmp/unicorn.sock")
Dir.mkdir(File.dirname(app_socket)) unless Dir.exist?(File.dirname(app_socket))

listen "unix:#{app_socket}", backlog: 64
worker_processes Integer(ENV.fetch("UNICORN_WORKERS", 4))
preload_app true
timeout 30
