# frozen_string_literal: true

require_relative "lib/sidecar/version"

Gem::Specification.new do |spec|
  spec.name = "sidecar-client"
  spec.version = Sidecar::VERSION
  spec.summary = "Publish to a Sidecar relay over its local Unix socket (the pusher gem's methods)"
  spec.description = "A client for Sidecar, a Pusher-protocol relay that runs beside a Ruby app: " \
                     "trigger events and sign channel auth over the sidecar's Unix socket, with " \
                     "kept connections that are safe across threads and forks. Standard library only."
  spec.authors = ["Sidecar"]
  spec.required_ruby_version = ">= 3.1"
  spec.files = Dir["lib/**/*.rb"] + ["README.md"]
  spec.require_paths = ["lib"]
  spec.metadata["rubygems_mfa_required"] = "true"
end
