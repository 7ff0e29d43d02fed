# frozen_string_literal: true

require "json"
require "uri"
require "sidecar/connection_pool"
require "sidecar/error"
require "sidecar/signature"
require "sidecar/version"

# Publish to a Sidecar (a Pusher-protocol relay beside the app) over its local Unix socket.
#
#   require "sidecar/client"
#   client = Sidecar::Client.new(socket: "/run/sidecar/sidecar.sock", app_id: "1")
#   client.trigger("orders", "created", { id: 42 })
#
# The methods are the pusher gem's, so moving from hosted Pusher is a rename. Requests on the
# socket need no signature (its file mode decides who may publish); the key and secret are
# only for signing the auth a page asks its app for.
module Sidecar
  # The process's client, from SIDECAR_SOCKET, SIDECAR_APP_ID, SIDECAR_KEY and SIDECAR_SECRET
  # (built on first use; safe to share across threads and forks).
  def self.client
    CLIENT_LOCK.synchronize { @client ||= Client.from_env }
  end

  def self.client=(client)
    CLIENT_LOCK.synchronize { @client = client }
  end

  CLIENT_LOCK = Mutex.new
  private_constant :CLIENT_LOCK

  class Client
    # Seconds to connect, and seconds for the answer (the pusher gem's own defaults are 5).
    DEFAULT_TIMEOUT = 5
    # Kept connections per client: one per thread publishing at the same moment is enough;
    # more are opened when needed and closed after.
    DEFAULT_MAX_IDLE = 8

    attr_reader :socket, :app_id, :key, :timeout

    # The sidecar's own defaults (its development config) when a variable is not set.
    def self.from_env(env = ENV)
      new(
        socket: env.fetch("SIDECAR_SOCKET", "./sidecar.sock"),
        app_id: env.fetch("SIDECAR_APP_ID", "1"),
        key: env["SIDECAR_KEY"],
        secret: env["SIDECAR_SECRET"],
        timeout: Float(env.fetch("SIDECAR_TIMEOUT", DEFAULT_TIMEOUT))
      )
    end

    def initialize(socket:, app_id:, key: nil, secret: nil, timeout: DEFAULT_TIMEOUT,
                   max_idle: DEFAULT_MAX_IDLE)
      raise ArgumentError, "socket: the path of the sidecar's publish socket" if socket.to_s.empty?
      raise ArgumentError, "app_id: the app's id in the sidecar's config" if app_id.to_s.empty?
      raise ArgumentError, "timeout: a number of seconds over 0" unless timeout.to_f.positive?

      @socket = socket.to_s
      @app_id = app_id.to_s
      @key = key
      @secret = secret
      @timeout = timeout
      @connections = ConnectionPool.new(@socket, timeout: timeout, max_idle: max_idle)
    end

    # Publish one event to a channel or a list of them (up to 100). data: a String is sent as
    # it is, anything else as JSON. socket_id: leave that connection out (the one that acted).
    def trigger(channels, event, data, params = {}, socket_id: nil)
      body = { name: event.to_s, data: data_string(data) }
      if channels.is_a?(Array)
        body[:channels] = channels.map(&:to_s)
      else
        body[:channel] = channels.to_s
      end
      socket_id ||= params[:socket_id] || params["socket_id"]
      body[:socket_id] = socket_id.to_s if socket_id
      post("events", body)
    end

    # Several events ({channel:, name:, data:, socket_id:}) in one request, all or none.
    def trigger_batch(*events)
      batch = events.flatten.map do |event|
        event = event.transform_keys(&:to_sym).compact
        event.merge(data: data_string(event[:data]))
      end
      post("batch_events", { batch: batch })
    end

    # Occupied channels: {channels: {"name" => {"subscription_count" => ...}}}.
    # Params as the pusher gem's: filter_by_prefix:, info: "user_count,subscription_count".
    def channels(params = {})
      get("channels", query(params))
    end

    # {occupied: true, subscription_count: 2, user_count: 1} (counts asked for with info:).
    def channel_info(channel, params = {}, info: nil)
      params = params.merge(info: info) if info
      get("channels/#{escape(channel)}", query(params))
    end

    # The members of a presence channel: {users: [{"id" => "7"}, ...]}.
    def channel_users(channel, params = {})
      get("channels/#{escape(channel)}/users", query(params))
    end

    # Close every connection signed in as this user (pusher-js does not reconnect them).
    def terminate_user_connections(user_id)
      post("users/#{escape(user_id)}/terminate_connections", {})
    end

    # What the page's auth endpoint answers for a private or presence channel:
    # {auth: "key:signature"} and, for presence, channel_data (the JSON string signed).
    #   render json: Sidecar.client.authenticate(params[:channel_name], params[:socket_id],
    #                                            { user_id: current_user.id })
    def authenticate(channel, socket_id, custom_data = nil)
      signature.channel(channel, socket_id, custom_data)
    end

    # What the page's user authentication endpoint answers for pusher-js's signin():
    # {auth:, user_data:} with user_data {id:, ...} as a JSON string.
    def authenticate_user(socket_id, user_data)
      signature.user(socket_id, user_data)
    end

    # Close the kept connections (a later request opens a new one).
    def close
      @connections.close
    end

    def inspect
      "#<#{self.class} socket=#{@socket} app_id=#{@app_id}>" # never the secret
    end

    private

    def signature
      @signature ||= Signature.new(@key, @secret)
    end

    def data_string(data)
      data.is_a?(String) ? data : JSON.generate(data)
    end

    def escape(segment)
      URI.encode_www_form_component(segment.to_s).gsub("+", "%20")
    end

    def query(params)
      params.each_with_object({}) do |(name, value), out|
        next if value.nil?

        out[name.to_s] = value.is_a?(Array) ? value.join(",") : value.to_s
      end
    end

    def post(path, body)
      request("POST", path, JSON.generate(body))
    end

    def get(path, params)
      request("GET", params.empty? ? path : "#{path}?#{URI.encode_www_form(params)}", nil)
    end

    def request(method, path, body)
      target = "/apps/#{escape(@app_id)}/#{path}"
      response = @connections.request(method, target, body)
      decoded = decode(response.body)
      if response.status >= 300
        reason = decoded.is_a?(Hash) && decoded["error"] || response.body.to_s[0, 200]
        raise HTTPError.new("#{response.status} from the sidecar on #{method} #{target}: #{reason}",
                            status: response.status, reason: reason)
      end
      unless decoded.is_a?(Hash)
        raise HTTPError.new("#{method} #{target}: the answer is not a JSON object",
                            status: response.status, reason: "not a JSON object")
      end
      # Symbol keys at the top level only, as the pusher gem answers (channel names stay
      # strings).
      decoded.transform_keys(&:to_sym)
    end

    def decode(body)
      body.nil? || body.empty? ? {} : JSON.parse(body)
    rescue JSON::ParserError
      nil
    end
  end
end
