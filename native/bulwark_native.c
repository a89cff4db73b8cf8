// Native helpers (docs/performance.md): what Node's fs cannot do, finding the data and the holes of a
// sparse file (lseek SEEK_DATA / SEEK_HOLE), so a backup reads what a file holds, not its size; and the
// chunker's hot loop, the same rule as src/repository/chunker.ts (Rule.scan) byte for byte.
// N-API only: one build serves every supported Node version.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
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

// The call's first `want` arguments into argv; false (a TypeError thrown) when fewer were given.
static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *usage) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  return 1;
}

// seek(fd, offset, whence): the offset lseek returns, or -1 when there is no more data (ENXIO past the
// last data for SEEK_DATA). Offsets travel as doubles: exact up to 2^53 bytes.
static napi_value seek(napi_env env, napi_callback_info info, int whence, const char *syscall) {
  napi_value argv[2], result;
  if (!get_args(env, info, 2, argv, "fd and offset are required")) return NULL;
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

// gearCut(data, from, to, min, avg, max, maskS, maskL, gear): where the chunk that starts at data[from]
// ends (the index just past it), looking at data[from..to); -1 when no cut point was found before `to`
// and the chunk is shorter than max. FastCDC with normalised masks, as Rule.scan of a fresh chunk.
static napi_value gear_cut(napi_env env, napi_callback_info info) {
  napi_value argv[9], result;
  if (!get_args(env, info, 9, argv, "gearCut takes 9 arguments")) return NULL;
  napi_typedarray_type type;
  size_t length, gear_length;
  void *raw;
  void *gear_raw;
  CHECK(napi_get_typedarray_info(env, argv[0], &type, &length, &raw, NULL, NULL));
  if (type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "data must be a Uint8Array");
    return NULL;
  }
  CHECK(napi_get_typedarray_info(env, argv[8], &type, &gear_length, &gear_raw, NULL, NULL));
  if (type != napi_int32_array || gear_length != 256) {
    napi_throw_type_error(env, NULL, "gear must be an Int32Array of 256 entries");
    return NULL;
  }
  int64_t from, to;
  uint32_t min, avg, max, mask_s, mask_l;
  CHECK(napi_get_value_int64(env, argv[1], &from));
  CHECK(napi_get_value_int64(env, argv[2], &to));
  CHECK(napi_get_value_uint32(env, argv[3], &min));
  CHECK(napi_get_value_uint32(env, argv[4], &avg));
  CHECK(napi_get_value_uint32(env, argv[5], &max));
  CHECK(napi_get_value_uint32(env, argv[6], &mask_s));
  CHECK(napi_get_value_uint32(env, argv[7], &mask_l));
  if (!(from >= 0 && from <= to && (uint64_t)to <= length && min < avg && avg < max)) {
    napi_throw_range_error(env, NULL, "gearCut: bad range or sizes");
    return NULL;
  }
  const uint8_t *data = raw;
  const uint32_t *gear = gear_raw;
  int64_t base = from, i = from, stop, found = -1;
  uint32_t h = 0;
  i = to < base + min ? to : base + min;
  if (i == to) goto done;
  stop = to < base + avg ? to : base + avg;
  for (; i < stop; i++) {
    h = (h << 1) + gear[data[i]];
    if ((h & mask_s) == 0) {
      found = i + 1;
      goto done;
    }
  }
  stop = to < base + max ? to : base + max;
  for (; i < stop; i++) {
    h = (h << 1) + gear[data[i]];
    if ((h & mask_l) == 0) {
      found = i + 1;
      goto done;
    }
  }
  if (i - base == (int64_t)max) found = i;
done:
  CHECK(napi_create_int64(env, found, &result));
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gearCut", NULL, gear_cut, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
