// hello-fs: the smallest file system on the FUSE module, after libfuse's hello_ll.c.
//
// It demonstrates the FileSystem protocol (lookup, getattr, open, read, readdir, ...),
// one-shot replies, a negative lookup cached by the kernel, EACCES for opens that want
// to write, and a session that mounts, serves on libfuse's worker threads, and unmounts
// cleanly on SIGINT, SIGTERM or SIGHUP. It always stays in the foreground: a Swift
// process must not fork (fuse_daemonize) once its runtime is running.
//
// Run it:
//   swift build --product hello-fs
//   mkdir -p /tmp/hello && .build/debug/hello-fs /tmp/hello &
//   ls -l /tmp/hello && cat /tmp/hello/hello      # Hello World!
//   kill %1                                       # or: fusermount3 -u /tmp/hello
//
// Usage: hello-fs MOUNTPOINT [-f] [-s] [-d] [-o OPTION[,OPTION...]]
//   -f  stay in the foreground (always the case; accepted for familiarity)
//   -s  single-threaded loop
//   -d  libfuse debug output: every request and reply on standard error
//   -o  libfuse mount options, e.g. -o allow_other,default_permissions

import FUSE
import Glibc
import Logging

let usage = "usage: hello-fs MOUNTPOINT [-f] [-s] [-d] [-o OPTION[,OPTION...]]\n"

func fail(_ message: String) -> Never {
  _ = message.withCString { write(STDERR_FILENO, $0, strlen($0)) }
  exit(2)
}

var mountpoint: String?
var options = ["fsname=hello", "subtype=hello-fs"]
var debug = false
var singleThreaded = false
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
  switch argument {
  case "-f": break
  case "-s": singleThreaded = true
  case "-d", "--debug": debug = true
  case "-o":
    guard let value = arguments.next() else { fail("hello-fs: -o needs a value\n" + usage) }
    options.append(value)
  case "-h", "--help":
    print(usage, terminator: "")
    exit(0)
  case _ where argument.hasPrefix("-o") && argument.count > 2:
    options.append(String(argument.dropFirst(2)))
  case _ where argument.hasPrefix("-"):
    fail("hello-fs: unknown option \(argument)\n" + usage)
  default:
    guard mountpoint == nil else { fail("hello-fs: more than one mountpoint\n" + usage) }
    mountpoint = argument
  }
}
guard let mountpoint else { fail(usage) }

LoggingSystem.bootstrap(StreamLogHandler.standardError)
var logger = Logger(label: "hello-fs")
if debug { logger.logLevel = .debug }

do {
  let session = try FUSESession(
    fileSystem: HelloFileSystem(), mountpoint: mountpoint, options: options, debug: debug,
    logger: logger)
  try session.installSignalHandlers()
  try session.mount()
  let ending = try singleThreaded ? session.runSingleThreaded() : session.run(threads: 4)
  session.close()
  logger.debug("hello-fs: \(ending)")
  exit(0)
} catch {
  fail("hello-fs: \(error)\n")
}
