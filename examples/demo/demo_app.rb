# frozen_string_literal: true

require "digest"
require "json"
require "rack"
require "securerandom"
require "sidecar/client"

# The Rack app of examples/puma and examples/unicorn: a page that subscribes to a public, a
# private and a presence channel, the auth endpoint that signs them, and a button whose request
# publishes three events (one of a megabyte) over the sidecar's Unix socket.
#
#   GET  /                the page (?name=ann picks the visitor's name, kept in a cookie)
#   POST /pusher/auth     pusher-js's channel authorization: {auth:, channel_data:}
#   POST /publish         publishes, answers {pid:, n:, bytes:, sha256:, ms:}
#   GET  /pusher.min.js   pusher-js, from PUSHER_JS (default: the copy `npm ci --prefix
#                         tests/support/node` installs in this repository)
class DemoApp
  PUBLIC = File.expand_path("public", __dir__)
  DEFAULT_PUSHER_JS = File.expand_path(
    "../../tests/support/node/node_modules/pusher-js/dist/web/pusher.min.js", __dir__
  )
  # The channels the page may join; the auth endpoint signs these and no others.
  CHANNELS = { public: "demo", private: "private-demo", presence: "presence-demo" }.freeze
  BIG_EVENT_BYTES = 1024 * 1024
  NAME = /\A[A-Za-z0-9_-]{1,32}\z/

  def initialize(server:, client: Sidecar.client, pusher_js: ENV.fetch("PUSHER_JS", DEFAULT_PUSHER_JS))
    @server = server
    @client = client
    @pusher_js = pusher_js
    @published = 0
    @lock = Mutex.new
  end

  def call(env)
    request = Rack::Request.new(env)
    case [request.request_method, request.path_info]
    in ["GET", "/"] then page(request)
    in ["GET", "/demo.js"] then file(File.join(PUBLIC, "demo.js"), "text/javascript")
    in ["GET", "/demo.css"] then file(File.join(PUBLIC, "demo.css"), "text/css")
    in ["GET", "/pusher.min.js"] then pusher_js
    in ["POST", "/pusher/auth"] then auth(request)
    in ["POST", "/publish"] then publish
    else json(404, { error: "no route for #{request.request_method} #{request.path_info}" })
    end
  end

  private

  def page(request)
    name = visitor(request)
    html = File.read(File.join(PUBLIC, "index.html"))
                .gsub("{{server}}", Rack::Utils.escape_html(@server))
                .gsub("{{key}}", Rack::Utils.escape_html(@client.key.to_s))
                .gsub("{{name}}", Rack::Utils.escape_html(name))
    headers = { "content-type" => "text/html; charset=utf-8", "cache-control" => "no-store" }
    Rack::Utils.set_cookie_header!(headers, "demo_user",
                                   { value: name, path: "/", httponly: true, same_site: :strict })
    [200, headers, [html]]
  end

  # Who the visitor is: a real app has its session; the demo takes ?name= or makes one up.
  def visitor(request)
    [request.params["name"], request.cookies["demo_user"]].find { |n| NAME.match?(n.to_s) } ||
      "guest-#{SecureRandom.hex(2)}"
  end

  # What a Rails controller's auth action does (see README, "With a Rails app").
  def auth(request)
    channel = request.params["channel_name"].to_s
    user = request.cookies["demo_user"].to_s
    return json(403, { error: "not a channel of this page" }) unless CHANNELS.value?(channel)
    return json(403, { error: "no visitor cookie: open the page first" }) unless NAME.match?(user)

    member = { user_id: user, user_info: { name: user, server: @server, pid: Process.pid } }
    json(200, @client.authenticate(channel, request.params["socket_id"], member))
  rescue ArgumentError => e
    json(400, { error: e.message })
  end

  def publish
    n = @lock.synchronize { @published += 1 }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    blob = SecureRandom.hex(BIG_EVENT_BYTES / 2)
    pid = Process.pid
    @client.trigger(CHANNELS[:public], "hello", { text: "hello from #{@server}", pid: pid, n: n })
    @client.trigger(CHANNELS[:private], "big", { pid: pid, n: n, blob: blob })
    @client.trigger(CHANNELS[:presence], "note", { text: "#{@server} worker #{pid} published", n: n })
    ms = ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000).round(1)
    json(200, { pid: pid, n: n, bytes: blob.bytesize, sha256: Digest::SHA256.hexdigest(blob), ms: ms })
  rescue Sidecar::Error => e
    # The sidecar's reason (413 too large, a missing socket...) reaches the page as it is.
    json(502, { error: e.message, status: e.status })
  end

  def pusher_js
    unless File.file?(@pusher_js)
      return json(404, { error: "pusher-js is not at #{@pusher_js}: run `npm ci --prefix tests/support/node` " \
                                "in the repository, or set PUSHER_JS to your copy of pusher.min.js" })
    end

    file(@pusher_js, "text/javascript")
  end

  def file(path, type)
    [200, { "content-type" => type, "cache-control" => "no-cache" }, [File.read(path)]]
  end

  def json(status, body)
    [status, { "content-type" => "application/json" }, [JSON.generate(body)]]
  end
end
