// Native helpers for what Node's fs cannot do (docs/performance.md): finding the data and the holes of
// a sparse file (lseek SEEK_DATA / SEEK_HOLE), so a backup reads what a file holds, not its size.
// N-API only: one build serves every supported Node version.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>

#define CHECK(call)                                  \
  do {                                               \
    if ((call) != napi_ok) return NULL;              \
  } while (0)

static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  napi_value msg, code, error, sys, no;
  char text[160];
  snprintf(text, sizeof text, "%s: %s", syscall, strerror(err));
  const char *name = err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EIO ? "EIO" : err == ENXIO ? "ENXIO" : err == EOVERFLOW ? "EOVERFLOW" : "EUNKNOWN";
  CHECK(napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg));
  CHECK(napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code));
  CHECK(napi_create_error(env, code, msg, &error));
  CHECK(napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys));
  CHECK(napi_set_named_property(env, error, "syscall", sys));
  CHECK(napi_create_int32(env, -err, &no));
  CHECK(napi_set_named_property(env, error, "errno", no));
  napi_throw(env, error);
  return NULL;
}

// seek(fd, offset, whence): the offset lseek returns, or -1 when there is no more data (ENXIO past the
// last data for SEEK_DATA). Offsets travel as doubles: exact up to 2^53 bytes.
static napi_value seek(napi_env env, napi_callback_info info, int whence, const char *syscall) {
  size_t argc = 2;
  napi_value argv[2], result;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) {
    napi_throw_type_error(env, NULL, "fd and offset are required");
    return NULL;
  }
  int32_t fd;
  double offset;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_double(env, argv[1], &offset));
  if (!(offset >= 0 && offset <= 9007199254740992.0)) {
    napi_throw_range_error(env, NULL, "offset out of range");
    return NULL;
  }
  off_t at = lseek(fd, (off_t)offset, whence);
  if (at < 0) {
    if (errno == ENXIO) {
      CHECK(napi_create_double(env, -1, &result));
      return result;
    }
    return throw_errno(env, errno, syscall);
  }
  CHECK(napi_create_double(env, (double)at, &result));
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) { return seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)"); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)"); }

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
