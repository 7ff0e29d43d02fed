# frozen_string_literal: true

require "json"
require "socket"

# A stand-in for the sidecar's publish socket: a UNIXServer in a thread that records each
# request and answers it as the test says (by default 200 {}), keeping connections open.
#
#   server = FakeSidecar.new(dir) { |request| [413, { error: "data: too big" }] }
#   server.requests  # => [#<Request method, path, headers, body, connection>]
#
# The block may also return :close (close without answering), :hang (never answer) or a raw
# String (written as it is).
class FakeSidecar
  Request = Struct.new(:method, :path, :headers, :body, :connection, keyword_init: true) do
    def json
      JSON.parse(body)
    end
  end

  attr_reader :path, :requests, :connections

  def initialize(dir, name: "sidecar.sock", &answer)
    @path = File.join(dir, name)
    @answer = answer || ->(_request) { [200, {}] }
    @server = UNIXServer.new(@path)
    @requests = Queue.new
    @connections = 0
    @clients = []
    @lock = Mutex.new
    @thread = Thread.new { accept_loop }
  end

  # Every request seen so far, in order.
  def seen
    list = []
    list << @requests.pop until @requests.empty?
    list.each { |request| @requests << request }
    list
  end

  # Close every connection the server holds (as a restarted sidecar would).
  def drop_connections
    @lock.synchronize do
      @clients.each { |client| client.close unless client.closed? }
      @clients.clear
    end
  end

  def close
    @thread.kill
    @thread.join(1)
    drop_connections
    @server.close unless @server.closed?
    File.unlink(@path) if File.exist?(@path)
  end

  private

  def accept_loop
    loop do
      client = @server.accept
      @lock.synchronize do
        @connections += 1
        @clients << client
      end
      Thread.new(client, @connections) { |c, n| serve(c, n) }
    end
  rescue IOError, SystemCallError
    nil
  end

  def serve(client, number)
    while (request = read_request(client, number))
      @requests << request
      answer = @answer.call(request)
      case answer
      when :close then break
      when :hang then sleep
      when String then client.write(answer)
      else
        status, body = answer
        payload = body.is_a?(String) ? body : JSON.generate(body)
        client.write("HTTP/1.1 #{status} X\r\nContent-Type: application/json\r\n" \
                     "Content-Length: #{payload.bytesize}\r\n\r\n#{payload}")
      end
    end
  rescue IOError, SystemCallError
    nil
  ensure
    client.close unless client.closed?
  end

  def read_request(client, number)
    head = client.gets("\r\n\r\n")
    return nil if head.nil?

    request_line, *lines = head.split("\r\n")
    method, path, = request_line.split(" ")
    headers = lines.to_h do |line|
      name, value = line.split(":", 2)
      [name.downcase, value.strip]
    end
    length = headers.fetch("content-length", "0").to_i
    body = length.positive? ? client.read(length) : ""
    Request.new(method: method, path: path, headers: headers, body: body, connection: number)
  end
end
