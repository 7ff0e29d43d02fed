# frozen_string_literal: true

# examples/unicorn: the demo app on Unicorn with 4 workers, behind the sidecar (see
# examples/README.md). Run from this folder: `unicorn -c unicorn.rb config.ru`.
$LOAD_PATH.unshift(File.expand_path("../../clients/ruby/lib", __dir__)) # the gem, from the repo
require_relative "../demo/demo_app"

ENV["SIDECAR_SOCKET"] ||= "tmp/sidecar.sock"
ENV["SIDECAR_APP_ID"] ||= "1"
ENV["SIDECAR_KEY"] ||= "example-key"
ENV["SIDECAR_SECRET"] ||= "example-secret-change-me"

# preload_app: this runs once, in the master, before the workers are forked. The client is
# made here and used once (a kept connection is open when Unicorn forks); each worker sees it
# was made in another process and opens its own connection, never writing on the master's.
client = Sidecar.client
begin
  occupied = client.channels[:channels].size
  warn "sidecar at #{client.socket}: up, #{occupied} occupied channels"
rescue Sidecar::Error => e
  warn "sidecar not reachable yet (#{e.message}); publishing will say so until it is"
end

run DemoApp.new(server: "Unicorn", client: client)
