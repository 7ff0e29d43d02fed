# frozen_string_literal: true

# Puma for examples/puma: threads share one Sidecar::Client; the sidecar reaches Puma on a Unix
# socket (its `upstream:`), so nothing listens on a TCP port but the sidecar.
app_socket = ENV.fetch("APP_SOCKET", "tmp/puma.sock")
Dir.mkdir(File.dirname(app_socket)) unless Dir.exist?(File.dirname(app_socket))

# umask 0007: the socket is the user's and its group's (the sidecar's user in that group).
bind "unix://#{app_socket}?umask=0007"
threads 4, 8
workers Integer(ENV.fetch("PUMA_WORKERS", 0)) # cluster mode: preload_app! below is fork safe
preload_app! if Integer(ENV.fetch("PUMA_WORKERS", 0)).positive?
rackup File.expand_path("config.ru", __dir__)
environment ENV.fetch("RACK_ENV", "production")
