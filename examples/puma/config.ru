# frozen_string_literal: true

# examples/puma: the demo app on Puma, behind the sidecar (see examples/README.md).
# Run from this folder: `puma -C puma.rb`; the sidecar's config is sidecar.yaml here.
$LOAD_PATH.unshift(File.expand_path("../../clients/ruby/lib", __dir__)) # the gem, from the repo
require_relative "../demo/demo_app"

# The sidecar this folder's sidecar.yaml describes, unless the environment says otherwise
# (docker-compose.yml does).
ENV["SIDECAR_SOCKET"] ||= "tmp/sidecar.sock"
ENV["SIDECAR_APP_ID"] ||= "1"
ENV["SIDECAR_KEY"] ||= "example-key"
ENV["SIDECAR_SECRET"] ||= "example-secret-change-me"

# One client for every thread: each publish takes a kept connection of its own.
run DemoApp.new(server: "Puma", client: Sidecar.client)
