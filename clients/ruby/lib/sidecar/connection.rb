# frozen_string_literal: true

require "io/wait"
require "socket"
require "sidecar/error"

module Sidecar
  # One HTTP/1.1 connection to the sidecar's Unix socket, kept open between requests.
  #
  # The publish API answers each request with a Content-Length and keeps the connection, so
  # this speaks only that much HTTP: a request, its answer, the next request. One thread at a
  # time (ConnectionPool sees to it). Every wait is bounded: connecting by `timeout`, and
  # sending the request plus reading its answer by `timeout` together.
  class Connection
    # The sidecar closed a kept connection before answering (it restarted, say): nothing of
    # the request was acted on, so it may be sent again on a new connection.
    class Closed < StandardError; end

    Response = Struct.new(:status, :body, :keep_alive)

    # Bodies up to this size go out in the same write as the head (one system call); larger
    # ones after it, so a megabyte of data is never copied just to put a head before it.
    COALESCE_BYTES = 64 * 1024
    READ_BYTES = 64 * 1024
    # An answer's head is a few lines; more than this is not the sidecar talking.
    MAX_HEAD_BYTES = 16 * 1024

    # The process that opened it: a forked child must open its own (ConnectionPool checks).
    attr_reader :pid

    def initialize(path, timeout)
      @path = path
      @timeout = timeout
      @pid = Process.pid
      @buffer = String.new(capacity: READ_BYTES)
      @socket = connect
    end

    # False once the sidecar closed it (end of file is readable before anything was sent).
    def usable?
      return false if @socket.closed?

      @socket.read_nonblock(1, exception: false) == :wait_readable
    rescue IOError, SystemCallError
      false
    end

    def close
      @socket.close unless @socket.closed?
    rescue IOError
      nil
    end

    # Send one request; its Response. Raises Closed when the connection was closed before
    # a byte of the answer came, TimeoutError past the deadline, ConnectionError otherwise.
    def request(method, target, body = nil)
      deadline = clock + @timeout
      @what = "#{method} #{target}"
      @received = false
      head = +"#{method} #{target} HTTP/1.1\r\nHost: localhost\r\n"
      head << "Content-Type: application/json\r\nContent-Length: #{body.bytesize}\r\n" if body
      head << "\r\n"
      if body && body.bytesize <= COALESCE_BYTES
        write_all(head << body, deadline)
      else
        write_all(head, deadline)
        write_all(body, deadline) if body
      end
      read_response(deadline)
    rescue Errno::EPIPE, Errno::ECONNRESET
      closed_early
    end

    private

    def clock
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def connect
      deadline = clock + @timeout
      address = Socket.sockaddr_un(@path)
      pause = 0.001
      loop do
        socket = Socket.new(:UNIX, :STREAM)
        begin
          return socket if finish_connect(socket, address, deadline)
        rescue Errno::EAGAIN
          # The socket's backlog is full (Linux says so at once rather than waiting): the
          # sidecar is busy accepting; try again shortly, until the timeout.
          socket.close
        rescue StandardError => e
          socket.close
          raise if e.is_a?(Error)

          raise ConnectionError, connect_failure(e)
        end
        remaining = deadline - clock
        raise connect_timeout if remaining <= 0

        sleep([pause, remaining].min)
        pause = [pause * 2, 0.05].min
      end
    end

    def finish_connect(socket, address, deadline)
      return true unless socket.connect_nonblock(address, exception: false) == :wait_writable

      remaining = deadline - clock
      raise connect_timeout unless remaining.positive? && socket.wait_writable(remaining)

      socket.connect_nonblock(address, exception: false)
      true
    rescue Errno::EISCONN
      true
    end

    def connect_timeout
      TimeoutError.new("#{@path}: no connection within #{@timeout} s (the sidecar is not accepting)")
    end

    def connect_failure(error)
      case error
      when Errno::ENOENT
        "#{@path}: no such socket: is the sidecar running, with publish.socket at this path?"
      when Errno::ECONNREFUSED
        "#{@path}: connection refused: no sidecar listens on it (it stopped?)"
      when Errno::EACCES
        "#{@path}: permission denied: the app's user must be in the socket's group " \
        "(publish.socket_mode)"
      else
        "#{@path}: cannot connect: #{error.message}"
      end
    end

    def write_all(data, deadline)
      size = data.bytesize
      offset = 0
      while offset < size
        # A slice to the end shares the string's bytes: no copy of a large body.
        chunk = offset.zero? ? data : data.byteslice(offset, size - offset)
        written = @socket.write_nonblock(chunk, exception: false)
        if written == :wait_writable
          wait(:wait_writable, deadline)
        else
          offset += written
        end
      end
    end

    def read_response(deadline)
      until (head_end = @buffer.index("\r\n\r\n"))
        if @buffer.bytesize > MAX_HEAD_BYTES
          raise ConnectionError, "#{@path}: an answer head over #{MAX_HEAD_BYTES} bytes"
        end

        fill!(deadline)
      end
      status_line, *lines = @buffer.byteslice(0, head_end).split("\r\n")
      @buffer = @buffer.byteslice(head_end + 4, @buffer.bytesize)
      version, code, = status_line.split(" ", 3)
      unless version&.start_with?("HTTP/1.") && code&.match?(/\A\d{3}\z/)
        raise ConnectionError, "#{@path}: not an HTTP answer: #{status_line[0, 60].inspect}"
      end

      headers = lines.to_h do |line|
        name, value = line.split(":", 2)
        [name.downcase, value.to_s.strip]
      end
      keep_alive = version == "HTTP/1.1" && !headers["connection"].to_s.casecmp?("close")
      body =
        if headers["transfer-encoding"].to_s.downcase.include?("chunked")
          read_chunked(deadline)
        elsif headers.key?("content-length")
          read_exactly(Integer(headers["content-length"], 10), deadline)
        else
          keep_alive = false
          read_to_end(deadline)
        end
      Response.new(Integer(code, 10), body, keep_alive)
    end

    def read_exactly(length, deadline)
      fill!(deadline) while @buffer.bytesize < length
      body = @buffer.byteslice(0, length)
      @buffer = @buffer.byteslice(length, @buffer.bytesize)
      body
    end

    def read_line(deadline)
      fill!(deadline) until (line_end = @buffer.index("\r\n"))
      read_exactly(line_end + 2, deadline).chomp("\r\n")
    end

    def read_chunked(deadline)
      body = +""
      while (size = Integer(read_line(deadline).split(";", 2).first.strip, 16)).positive?
        body << read_exactly(size, deadline)
        read_exactly(2, deadline)
      end
      loop { break if read_line(deadline).empty? } # trailers, if any
      body
    end

    def read_to_end(deadline)
      nil while fill(deadline)
      body = @buffer
      @buffer = String.new(capacity: READ_BYTES)
      body
    end

    # More bytes of the answer into @buffer; false at end of file.
    def fill(deadline)
      loop do
        chunk = @socket.read_nonblock(READ_BYTES, exception: false)
        case chunk
        when :wait_readable then wait(:wait_readable, deadline)
        when nil then return false
        else
          @received = true
          @buffer << chunk
          return true
        end
      end
    end

    # More bytes of an answer that is not complete yet: end of file here is an error.
    def fill!(deadline)
      closed_early unless fill(deadline)
    end

    def closed_early
      raise Closed, "the sidecar closed the connection" unless @received

      raise ConnectionError, "#{@path}: the sidecar closed the connection during #{@what}"
    end

    def wait(direction, deadline)
      remaining = deadline - clock
      return if remaining.positive? && @socket.public_send(direction, remaining)

      raise TimeoutError, "#{@path}: no answer to #{@what} within #{@timeout} s"
    end
  end
end
