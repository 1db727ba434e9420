/*
 * Keeps a test process alive when a thread of librdkafka's mock cluster (the development broker,
 * which tests run inside their own process) fails one of its assertions: abort() in that thread
 * parks the thread instead of ending the process, which would end every test file the bun test
 * worker runs after it. Seen once: rd_kafka_mock_cgrp_member_add's `!member->resp` during a
 * test's teardown. Only librdkafka's threads (named "rdk:…") are parked: an abort anywhere else
 * (the main thread, JavaScriptCore's, libSQL's) still ends the process, as before.
 * Compiled by bun:ffi's TinyCC (abort-guard.ts); no system headers needed.
 */
typedef void (*handler_t)(int);
extern handler_t signal(int sig, handler_t handler);
extern unsigned long pthread_self(void);
extern int pause(void);
extern long write(int fd, const void *buf, unsigned long n);
extern int raise(int sig);
extern int prctl(int option, ...);

#define SIGABRT 6
#define PR_GET_NAME 16

static unsigned long main_thread;
static volatile int parked;
static const char said[] =
    "\ntests: a thread of the development broker (librdkafka's mock cluster) failed an assertion and called abort(); "
    "the thread is parked so that this test process lives on, and that broker no longer answers\n";

static int librdkafka_thread(void) {
  char name[17] = {0};
  if (prctl(PR_GET_NAME, (unsigned long)name, 0, 0, 0) != 0) return 0;
  return name[0] == 'r' && name[1] == 'd' && name[2] == 'k' && name[3] == ':';
}

static void on_abort(int sig) {
  if (pthread_self() == main_thread || !librdkafka_thread()) {
    signal(sig, (handler_t)0);
    raise(sig);
    return;
  }
  parked++;
  write(2, said, sizeof(said) - 1);
  for (;;) pause();
}

int guard_install(void) {
  main_thread = pthread_self();
  return signal(SIGABRT, on_abort) == (handler_t)-1 ? -1 : 0;
}

int guard_parked(void) { return parked; }
