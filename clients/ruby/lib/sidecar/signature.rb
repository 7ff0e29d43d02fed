# frozen_string_literal: true

require "json"
require "openssl"
require "sidecar/error"

module Sidecar
  # The signatures a page needs from its app, exactly as the sidecar checks them
  # (sidecar/protocol/signatures.py): `key:hex(HMAC-SHA256(secret, string))` over
  #
  #   socket_id:channel                 private channels
  #   socket_id:channel:channel_data    presence channels (channel_data: the JSON string sent)
  #   socket_id::user::user_data        user sign-in
  #
  # No I/O; the pusher gem's `authenticate` and `authenticate_user` return the same hashes.
  class Signature
    # What pusher-js sends as socket_id (the sidecar refuses anything else too).
    SOCKET_ID = /\A\d+\.\d+\z/

    def initialize(key, secret)
      if key.to_s.empty? || secret.to_s.empty?
        raise Error, "signing auth needs the app's key and secret: " \
                     "Sidecar::Client.new(key:, secret:) or SIDECAR_KEY and SIDECAR_SECRET"
      end
      @key = key.to_s
      @secret = secret.to_s
    end

    # {auth:} for a private channel; {auth:, channel_data:} for a presence channel, where
    # custom_data is {user_id:, user_info:} (the pusher gem's argument).
    def channel(channel, socket_id, custom_data = nil)
      check_socket_id(socket_id)
      channel = channel.to_s
      if channel.start_with?("presence-")
        channel_data = presence_data(custom_data)
        { auth: auth("#{socket_id}:#{channel}:#{channel_data}"), channel_data: channel_data }
      else
        # Private channels sign socket_id:channel only, as the sidecar checks them: custom
        # data (one auth action passing the user for every channel) is left out, where the
        # pusher gem would sign it too and the sidecar would refuse the subscription.
        { auth: auth("#{socket_id}:#{channel}") }
      end
    end

    # {auth:, user_data:} for pusher-js's user sign-in; user_data must have an id.
    def user(socket_id, user_data)
      check_socket_id(socket_id)
      unless user_data.is_a?(Hash) && !(user_data[:id] || user_data["id"]).to_s.empty?
        raise ArgumentError, "user_data must be a Hash with a non-empty id"
      end
      user_data = JSON.generate(user_data)
      { auth: auth("#{socket_id}::user::#{user_data}"), user_data: user_data }
    end

    def hex(string)
      OpenSSL::HMAC.hexdigest("SHA256", @secret, string)
    end

    private

    def auth(string)
      "#{@key}:#{hex(string)}"
    end

    def check_socket_id(socket_id)
      return if SOCKET_ID.match?(socket_id.to_s)

      raise ArgumentError, "socket_id #{socket_id.to_s[0, 40].inspect} is not like 123.456"
    end

    def presence_data(custom_data)
      unless custom_data.is_a?(Hash) && !(custom_data[:user_id] || custom_data["user_id"]).nil?
        raise ArgumentError, "a presence channel needs custom_data with a user_id " \
                             "(and optional user_info)"
      end
      JSON.generate(custom_data)
    end
  end
end
