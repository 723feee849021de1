// The entry point only; everything else lives in other files (top-level code
// is main-actor isolated, which libfuse's worker threads must never touch).
runMramfs()
