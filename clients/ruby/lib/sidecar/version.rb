# frozen_string_literal: true

module Sidecar
  VERSION = "0.1.0"
end
