# frozen_string_literal: true

module Sidecar
  # Everything this client raises:
  #
  #   Sidecar::Error              a refusal (status and the sidecar's reason), or a bad argument
  #   +-- Sidecar::HTTPError      the sidecar answered 4xx/5xx: status 413 too large, 400 naming
  #   |                           the field, 404 unknown app, 503 shutting down
  #   +-- Sidecar::ConnectionError  no answer: the socket is missing, refused, not ours to open,
  #       |                         or closed before answering (status is nil)
  #       +-- Sidecar::TimeoutError no connection or no answer within the client's timeout
  class Error < StandardError
    # The HTTP status of the sidecar's answer (nil when there was none).
    attr_reader :status
    # The sidecar's own words (its JSON "error"), or what went wrong with the socket.
    attr_reader :reason

    def initialize(message = nil, status: nil, reason: nil)
      super(message)
      @status = status
      @reason = reason || message
    end
  end

  class HTTPError < Error; end

  class ConnectionError < Error; end

  class TimeoutError < ConnectionError; end
end
