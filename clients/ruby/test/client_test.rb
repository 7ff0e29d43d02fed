# frozen_string_literal: true

require "test_helper"

# The API against a fake publish socket: what goes on the wire, what comes back, the errors.
class ClientTest < Minitest::Test
  def setup
    @dir = Dir.mktmpdir("sidecar-client")
    @answers = []
    @server = FakeSidecar.new(@dir) { |request| @answers.shift&.call(request) || [200, {}] }
    @client = Sidecar::Client.new(socket: @server.path, app_id: "1", timeout: 2)
  end

  def teardown
    @client.close
    @server.close
    FileUtils.remove_entry(@dir)
  end

  def answer(&block)
    @answers << block
  end

  def test_trigger_posts_the_event_with_a_hash_as_json
    assert_equal({}, @client.trigger("orders", "created", { id: 42 }))
    request = @server.seen.last
    assert_equal %w[POST /apps/1/events], [request.method, request.path]
    assert_equal "application/json", request.headers["content-type"]
    assert_equal({ "name" => "created", "data" => '{"id":42}', "channel" => "orders" }, request.json)
  end

  def test_trigger_sends_a_string_as_it_is_to_several_channels_without_the_sender
    @client.trigger(%w[a b], "e", "plain text", socket_id: "123.456")
    @client.trigger("a", "e", "[1]", { socket_id: "1.2" })
    first, second = @server.seen.map(&:json)
    assert_equal({ "name" => "e", "data" => "plain text", "channels" => %w[a b],
                   "socket_id" => "123.456" }, first)
    assert_equal "[1]", second["data"]
    assert_equal "1.2", second["socket_id"]
  end

  def test_trigger_batch_takes_a_list_or_several_arguments
    @client.trigger_batch([{ channel: "a", name: "x", data: { n: 1 } },
                           { "channel" => "b", "name" => "y", "data" => "s", "socket_id" => nil }])
    @client.trigger_batch({ channel: "c", name: "z", data: 1 }, { channel: "d", name: "z", data: 2 })
    first, second = @server.seen
    assert_equal "/apps/1/batch_events", first.path
    assert_equal [{ "channel" => "a", "name" => "x", "data" => '{"n":1}' },
                  { "channel" => "b", "name" => "y", "data" => "s" }], first.json["batch"]
    assert_equal(%w[c d], second.json["batch"].map { |e| e["channel"] })
  end

  def test_queries_take_the_pusher_gem_s_params_and_answer_with_symbol_keys_on_top
    answer { [200, { channels: { "presence-room" => { user_count: 2 } } }] }
    answer { [200, { occupied: true, subscription_count: 3 }] }
    answer { [200, { users: [{ id: "7" }] }] }
    channels = @client.channels(filter_by_prefix: "presence-", info: %w[user_count])
    info = @client.channel_info("private-a b", info: "subscription_count")
    users = @client.channel_users("presence-room")
    assert_equal({ channels: { "presence-room" => { "user_count" => 2 } } }, channels)
    assert_equal({ occupied: true, subscription_count: 3 }, info)
    assert_equal({ users: [{ "id" => "7" }] }, users)
    paths = @server.seen.map(&:path)
    assert_equal ["/apps/1/channels?filter_by_prefix=presence-&info=user_count",
                  "/apps/1/channels/private-a%20b?info=subscription_count",
                  "/apps/1/channels/presence-room/users"], paths
    assert(@server.seen.all? { |request| request.method == "GET" && request.body.empty? })
  end

  def test_terminate_user_connections
    @client.terminate_user_connections("user@example.com")
    request = @server.seen.last
    assert_equal "/apps/1/users/user%40example.com/terminate_connections", request.path
    assert_equal({}, request.json)
  end

  def test_connection_is_kept_between_requests
    5.times { |n| @client.trigger("a", "e", n) }
    assert_equal [1], @server.seen.map(&:connection).uniq
  end

  def test_a_megabyte_goes_whole
    data = "x" * (1024 * 1024)
    @client.trigger("big", "e", data)
    assert_equal data, @server.seen.last.json["data"]
  end

  def test_413_names_the_status_and_the_sidecar_s_reason
    answer { [413, { error: "data: 9000000 bytes, over this app's limit of 8388608 bytes" }] }
    error = assert_raises(Sidecar::HTTPError) { @client.trigger("a", "e", "x") }
    assert_equal 413, error.status
    assert_equal "data: 9000000 bytes, over this app's limit of 8388608 bytes", error.reason
    assert_match(/413 .* POST \/apps\/1\/events: data: 9000000 bytes/, error.message)
    assert_kind_of Sidecar::Error, error
    @client.trigger("a", "e", "after") # the connection is still good
    assert_equal [1], @server.seen.map(&:connection).uniq
  end

  def test_400_names_the_field
    answer { [400, { error: "channels: at most 100" }] }
    error = assert_raises(Sidecar::Error) { @client.trigger(%w[a], "e", "x") }
    assert_equal [400, "channels: at most 100"], [error.status, error.reason]
  end

  def test_an_answer_that_is_not_json_is_an_error_with_its_text
    answer { [502, "Bad Gateway"] }
    answer { [200, "[]"] }
    error = assert_raises(Sidecar::HTTPError) { @client.trigger("a", "e", "x") }
    assert_equal [502, "Bad Gateway"], [error.status, error.reason]
    assert_raises(Sidecar::HTTPError) { @client.trigger("a", "e", "x") }
  end

  def test_a_chunked_answer_and_one_closed_after_are_read
    answer { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n" }
    answer { "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}" }
    assert_equal({ a: 1 }, @client.channels)
    assert_equal({}, @client.channels)
    @client.channels
    assert_equal [1, 1, 2], @server.seen.map(&:connection)
  end

  def test_a_sidecar_restart_between_requests_costs_nothing
    @client.trigger("a", "e", 1)
    @server.drop_connections
    sleep 0.05
    @client.trigger("a", "e", 2)
    assert_equal [[1, "1"], [2, "2"]], @server.seen.map { |r| [r.connection, r.json["data"]] }
  end

  def test_a_kept_connection_closed_while_the_request_was_sent_is_retried_once
    @client.trigger("a", "e", 1)
    answer { :close } # the sidecar reads it and closes: nothing acted on
    @client.trigger("a", "e", 2)
    assert_equal [1, 1, 2], @server.seen.map(&:connection)
  end

  def test_a_new_connection_closed_without_an_answer_is_an_error_not_a_loop
    answer { :close }
    error = assert_raises(Sidecar::ConnectionError) { @client.trigger("a", "e", 1) }
    assert_match(/closed the connection without answering/, error.message)
    assert_nil error.status
    assert_equal 1, @server.seen.size
  end

  def test_no_answer_within_the_timeout
    client = Sidecar::Client.new(socket: @server.path, app_id: "1", timeout: 0.3)
    answer { :hang }
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    error = assert_raises(Sidecar::TimeoutError) { client.trigger("a", "e", 1) }
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    assert_match(%r{no answer to POST /apps/1/events within 0.3 s}, error.message)
    assert_includes error.message, @server.path
    assert_operator elapsed, :<, 1.5
    client.trigger("a", "e", 2) # a new connection afterwards, not the half-used one
    assert_equal [1, 2], @server.seen.map(&:connection)
  ensure
    client&.close
  end

  def test_a_missing_socket_is_named
    client = Sidecar::Client.new(socket: File.join(@dir, "nope.sock"), app_id: "1")
    error = assert_raises(Sidecar::ConnectionError) { client.trigger("a", "e", 1) }
    assert_match(/nope\.sock: no such socket: is the sidecar running/, error.message)
    assert_nil error.status
  end

  def test_a_refused_socket_is_named
    path = File.join(@dir, "dead.sock")
    UNIXServer.new(path).close # the file stays, nobody listens: a sidecar that was killed
    client = Sidecar::Client.new(socket: path, app_id: "1")
    error = assert_raises(Sidecar::ConnectionError) { client.trigger("a", "e", 1) }
    assert_match(/dead\.sock: connection refused/, error.message)
  end

  def test_a_socket_that_never_accepts_times_out_connecting
    path = File.join(@dir, "full.sock")
    listener = Socket.new(:UNIX, :STREAM)
    listener.bind(Socket.sockaddr_un(path))
    listener.listen(0)
    fillers = []
    8.times do # until the backlog is full
      filler = Socket.new(:UNIX, :STREAM)
      fillers << filler
      filler.connect_nonblock(Socket.sockaddr_un(path), exception: false)
    rescue Errno::EAGAIN
      break
    end
    client = Sidecar::Client.new(socket: path, app_id: "1", timeout: 0.3)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    error = assert_raises(Sidecar::TimeoutError) { client.trigger("a", "e", 1) }
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 1.5
    assert_match(/full\.sock: no connection within 0.3 s/, error.message)
  ensure
    fillers&.each(&:close)
    listener&.close
  end

  def test_from_env_and_the_process_client
    env = { "SIDECAR_SOCKET" => @server.path, "SIDECAR_APP_ID" => "7", "SIDECAR_KEY" => "k",
            "SIDECAR_SECRET" => "s" }
    client = Sidecar::Client.from_env(env)
    assert_equal [@server.path, "7", "k"], [client.socket, client.app_id, client.key]
    assert_match(/\Ak:/, client.authenticate("private-a", "1.2")[:auth])
    refute_includes client.inspect, "\"s\""
    defaults = Sidecar::Client.from_env({})
    assert_equal ["./sidecar.sock", "1"], [defaults.socket, defaults.app_id]
    Sidecar.client = client
    assert_same client, Sidecar.client
  ensure
    Sidecar.client = nil
    client&.close
  end

  def test_bad_arguments
    assert_raises(ArgumentError) { Sidecar::Client.new(socket: "", app_id: "1") }
    assert_raises(ArgumentError) { Sidecar::Client.new(socket: "a.sock", app_id: nil) }
    assert_raises(ArgumentError) { Sidecar::Client.new(socket: "a.sock", app_id: "1", timeout: 0) }
  end
end
