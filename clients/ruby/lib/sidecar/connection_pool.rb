# frozen_string_literal: true

require "sidecar/connection"
require "sidecar/error"

module Sidecar
  # The client's kept connections: each request takes one (or opens one), and gives it back
  # when the answer is read whole. Threads (Puma) never share a connection at the same time,
  # and never wait on each other's requests; a forked child (Unicorn workers, Puma's cluster
  # mode, preload_app) never uses its parent's connections: they are dropped on first use
  # after a fork and the child opens its own.
  class ConnectionPool
    def initialize(path, timeout:, max_idle:)
      @path = path
      @timeout = timeout
      @max_idle = max_idle
      @idle = []
      @pid = Process.pid
      @lock = Mutex.new
    end

    # The Connection::Response to one request. A kept connection the sidecar had closed
    # (found before sending, or by a send that got no answer at all) is replaced once.
    def request(method, target, body = nil)
      connection, reused = checkout
      begin
        response = connection.request(method, target, body)
      rescue Connection::Closed
        connection.close
        unless reused
          raise ConnectionError, "#{@path}: the sidecar closed the connection without answering"
        end

        connection = Connection.new(@path, @timeout)
        reused = false
        retry
      rescue Exception # rubocop:disable Lint/RescueException
        # Whatever stopped it (a Rack timeout's exception too), a connection left mid-answer
        # would hand the rest of that answer to the next request.
        connection.close
        raise
      end
      response.keep_alive ? checkin(connection) : connection.close
      response
    end

    # Close the kept connections (in-flight ones close when their request ends).
    def close
      idle = @lock.synchronize { @idle.slice!(0..) }
      idle.each(&:close)
    end

    def size
      @lock.synchronize { @idle.size }
    end

    private

    def checkout
      loop do
        connection = @lock.synchronize do
          forget_parent if @pid != Process.pid
          @idle.pop
        end
        return [Connection.new(@path, @timeout), false] if connection.nil?
        return [connection, true] if connection.usable?

        connection.close
      end
    end

    def checkin(connection)
      keep = @lock.synchronize do
        forget_parent if @pid != Process.pid
        @idle.push(connection) if connection.pid == @pid && @idle.size < @max_idle
      end
      connection.close unless keep
    end

    # In a forked child: the inherited sockets are the parent's conversations. Closing the
    # child's copies of the descriptors leaves the parent's open and untouched.
    def forget_parent
      @idle.each(&:close)
      @idle.clear
      @pid = Process.pid
    end
  end
end
