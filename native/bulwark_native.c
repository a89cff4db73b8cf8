// Native helpers (docs/performance.md): what Node's fs cannot do, finding the data and the holes of a
// sparse file (lseek SEEK_DATA / SEEK_HOLE), so a backup reads what a file holds, not its size; and the
// chunker's hot loop, the same rule as src/repository/chunker.ts (Rule.scan) byte for byte; and a
// folder's listing with each entry's status, without the garbage of Node's BigInt stats; and AES-256-GCM
// in place, through the OpenSSL that Node itself carries, so opening and sealing a blob need no fresh
// buffer (Node's Cipher makes a new one for every update).
// N-API only: one build serves every supported Node version.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/xattr.h>
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

// A time as nanoseconds since the epoch, in decimal, as BigInt's toString would write it.
static int ns_text(char *out, long long sec, long nsec) {
  __int128 v = (__int128)sec * 1000000000 + nsec;
  char tmp[48];
  int n = 0, neg = v < 0;
  unsigned __int128 u = neg ? -(unsigned __int128)v : (unsigned __int128)v;
  do {
    tmp[n++] = (char)('0' + (int)(u % 10));
    u /= 10;
  } while (u);
  int k = 0;
  if (neg) out[k++] = '-';
  while (n) out[k++] = tmp[--n];
  return k;
}

// A path argument (a Buffer) as a C string in `path` (PATH_MAX bytes): 0, or the errno for a path no
// system call would take (empty, too long, a NUL inside), or -1 when N-API failed.
static int path_arg(napi_env env, napi_value value, char *path) {
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, value, &data, &len) != napi_ok) return -1;
  if (len >= PATH_MAX) return ENAMETOOLONG;
  if (len == 0 || memchr(data, 0, len)) return EINVAL;
  memcpy(path, data, len);
  path[len] = 0;
  return 0;
}

// An errno as the call's result (a number: the caller asks Node for its usual error); NULL when `err`
// is -1 (an N-API failure, already pending).
static napi_value errno_value(napi_env env, int err) {
  napi_value result;
  if (err < 0) return NULL;
  CHECK(napi_create_int32(env, err, &result));
  return result;
}

static void fill_stat(double *out, const struct stat *st) {
  out[0] = st->st_mode;
  out[1] = st->st_uid;
  out[2] = st->st_gid;
  out[3] = (double)st->st_size;
  out[4] = (double)st->st_ino;
  out[5] = (double)st->st_dev;
  out[6] = (double)st->st_nlink;
  out[7] = (double)st->st_rdev;
  out[8] = (double)st->st_blocks;
}

// Appends "mtimeNs ctimeNs" to text (at least 100 bytes free); returns the bytes written.
static int times_text(char *text, const struct stat *st) {
  int k = ns_text(text, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
  text[k++] = ' ';
  return k + ns_text(text + k, (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
}

// statInto(pathBuffer | fd, out: Float64Array(9)): lstat of a path (or fstat of an fd) into `out` as
// mode, uid, gid, size, ino, dev, nlink, rdev, blocks, and "mtimeNs ctimeNs" returned as text; or the
// errno (a number) when it failed, for the caller to ask Node for its usual error. Node's
// lstatSync({ bigint: true }) makes fourteen BigInts and a Stats object per entry: a third of the time
// of a backup of an unchanged tree (docs/performance.md).
static napi_value stat_into(napi_env env, napi_callback_info info) {
  napi_value argv[2], result;
  if (!get_args(env, info, 2, argv, "a path (Buffer) or fd, and a Float64Array are required")) return NULL;
  napi_valuetype kind;
  CHECK(napi_typeof(env, argv[0], &kind));
  struct stat st;
  int rc;
  if (kind == napi_number) {
    int32_t fd;
    CHECK(napi_get_value_int32(env, argv[0], &fd));
    rc = fstat(fd, &st);
  } else {
    char path[PATH_MAX];
    int bad = path_arg(env, argv[0], path);
    if (bad) return errno_value(env, bad);
    rc = lstat(path, &st);
  }
  if (rc != 0) return errno_value(env, errno);
  napi_typedarray_type type;
  size_t count;
  void *outp;
  CHECK(napi_get_typedarray_info(env, argv[1], &type, &count, &outp, NULL, NULL));
  if (type != napi_float64_array || count < 9) {
    napi_throw_type_error(env, NULL, "out must be a Float64Array of 9");
    return NULL;
  }
  fill_stat(outp, &st);
  char text[100];
  int k = times_text(text, &st);
  CHECK(napi_create_string_latin1(env, text, (size_t)k, &result));
  return result;
}

// A growable byte buffer; out of memory leaves `failed` set.
typedef struct {
  char *data;
  size_t len, cap;
  int failed;
} grow_t;

static char *grow_reserve(grow_t *g, size_t more) {
  if (g->failed) return NULL;
  if (g->len + more > g->cap) {
    size_t cap = g->cap ? g->cap : 4096;
    while (cap < g->len + more) cap *= 2;
    char *p = realloc(g->data, cap);
    if (!p) {
      g->failed = 1;
      return NULL;
    }
    g->data = p;
    g->cap = cap;
  }
  return g->data + g->len;
}

// Doubles per entry in scanDir's stats: statInto's 9, then the size of its list of extended attributes.
#define ENTRY_DOUBLES 10

// The size of the entry's list of extended attributes: 0 for none (or none possible here, ENOTSUP), -1
// when it could not be told (the caller then asks the long way, and meets the error there). Symlinks
// carry none a backup keeps. Most entries have none: this one call spares a backup of a tree of small
// files a call into the xattr package per entry, which cost more than everything else done for them.
static double xattr_list_size(const char *dir, size_t dirlen, const char *name, const struct stat *st) {
  if (S_ISLNK(st->st_mode)) return 0;
  char path[PATH_MAX];
  size_t n = strlen(name);
  if (dirlen + 1 + n >= sizeof path) return -1;
  memcpy(path, dir, dirlen);
  path[dirlen] = '/';
  memcpy(path + dirlen + 1, name, n + 1);
  ssize_t size = llistxattr(path, NULL, 0);
  if (size >= 0) return (double)size;
  return errno == ENOTSUP ? 0 : -1;
}

// scanDir(pathBuffer): a folder's entries and their lstat in one call, each stat relative to the folder
// (fstatat): resolving every child's whole path again, as lstat(path) does, was most of the time of a
// backup of an unchanged tree. Returns [names, stats, times, count]: the names, each ended by a NUL, in
// one Buffer; per entry ENTRY_DOUBLES doubles (statInto's, and xattr_list_size); per entry
// "mtimeNs ctimeNs\n". An entry whose stat failed (it vanished meanwhile) has mode -errno. The folder
// failing to open returns its errno.
static napi_value scan_dir(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  if (!get_args(env, info, 1, argv, "a path (Buffer) is required")) return NULL;
  char path[PATH_MAX];
  int bad = path_arg(env, argv[0], path);
  if (bad) return errno_value(env, bad);
  DIR *dir = opendir(path);
  if (!dir) return errno_value(env, errno);
  int dfd = dirfd(dir);
  size_t pathlen = strlen(path);
  grow_t names = {0}, stats = {0}, times = {0};
  uint32_t count = 0;
  int err = 0;
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(dir);
    if (!de) {
      err = errno;
      break;
    }
    if (de->d_name[0] == '.' && (de->d_name[1] == 0 || (de->d_name[1] == '.' && de->d_name[2] == 0))) continue;
    size_t n = strlen(de->d_name) + 1;
    char *np = grow_reserve(&names, n);
    double *sp = (double *)grow_reserve(&stats, ENTRY_DOUBLES * sizeof(double));
    char *tp = grow_reserve(&times, 100);
    if (!np || !sp || !tp) break;
    memcpy(np, de->d_name, n);
    names.len += n;
    struct stat st;
    if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      fill_stat(sp, &st);
      sp[9] = xattr_list_size(path, pathlen, de->d_name, &st);
      times.len += (size_t)times_text(tp, &st);
    } else {
      memset(sp, 0, ENTRY_DOUBLES * sizeof(double));
      sp[0] = -(double)errno;
      tp[0] = '0';
      tp[1] = ' ';
      tp[2] = '0';
      times.len += 3;
    }
    stats.len += ENTRY_DOUBLES * sizeof(double);
    times.data[times.len++] = '\n';
    count++;
  }
  closedir(dir);
  if (names.failed || stats.failed || times.failed) err = ENOMEM;
  if (err) {
    free(names.data);
    free(stats.data);
    free(times.data);
    return errno_value(env, err);
  }
  napi_value out[4], ab;
  void *abp;
  napi_status ok = napi_create_buffer_copy(env, names.len, names.len ? names.data : "", NULL, &out[0]);
  if (ok == napi_ok) ok = napi_create_arraybuffer(env, stats.len, &abp, &ab);
  if (ok == napi_ok) {
    if (stats.len) memcpy(abp, stats.data, stats.len);
    ok = napi_create_typedarray(env, napi_float64_array, stats.len / sizeof(double), ab, 0, &out[1]);
  }
  if (ok == napi_ok) ok = napi_create_string_latin1(env, times.len ? times.data : "", times.len, &out[2]);
  free(names.data);
  free(stats.data);
  free(times.data);
  if (ok != napi_ok) return NULL;
  CHECK(napi_create_uint32(env, count, &out[3]));
  CHECK(napi_create_array_with_length(env, 4, &result));
  for (uint32_t i = 0; i < 4; i++) CHECK(napi_set_element(env, result, i, out[i]));
  return result;
}

// AES-256-GCM through the OpenSSL functions of the process itself (Node exports them; a Node linked to
// the system's libcrypto has them too), found with dlsym at load: no OpenSSL headers or library at build
// time. Where they are missing, gcm is simply not offered and callers use Node's crypto.
typedef struct evp_cipher_ctx EVP_CIPHER_CTX;
typedef struct evp_cipher EVP_CIPHER;
static struct {
  EVP_CIPHER_CTX *(*ctx_new)(void);
  void (*ctx_free)(EVP_CIPHER_CTX *);
  const EVP_CIPHER *(*aes_256_gcm)(void);
  int (*init)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *, const unsigned char *, int);
  int (*ctrl)(EVP_CIPHER_CTX *, int, int, void *);
  int (*update)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int);
  int (*final)(EVP_CIPHER_CTX *, unsigned char *, int *);
  int ok;
} ossl;
static pthread_once_t ossl_once = PTHREAD_ONCE_INIT;
#define EVP_CTRL_GCM_GET_TAG 0x10
#define EVP_CTRL_GCM_SET_TAG 0x11

static void ossl_resolve(void) {
  ossl.ctx_new = (EVP_CIPHER_CTX * (*)(void)) dlsym(RTLD_DEFAULT, "EVP_CIPHER_CTX_new");
  ossl.ctx_free = (void (*)(EVP_CIPHER_CTX *))dlsym(RTLD_DEFAULT, "EVP_CIPHER_CTX_free");
  ossl.aes_256_gcm = (const EVP_CIPHER *(*)(void))dlsym(RTLD_DEFAULT, "EVP_aes_256_gcm");
  ossl.init = (int (*)(EVP_CIPHER_CTX *, const EVP_CIPHER *, void *, const unsigned char *, const unsigned char *, int))dlsym(RTLD_DEFAULT, "EVP_CipherInit_ex");
  ossl.ctrl = (int (*)(EVP_CIPHER_CTX *, int, int, void *))dlsym(RTLD_DEFAULT, "EVP_CIPHER_CTX_ctrl");
  ossl.update = (int (*)(EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int))dlsym(RTLD_DEFAULT, "EVP_CipherUpdate");
  ossl.final = (int (*)(EVP_CIPHER_CTX *, unsigned char *, int *))dlsym(RTLD_DEFAULT, "EVP_CipherFinal_ex");
  ossl.ok = ossl.ctx_new && ossl.ctx_free && ossl.aes_256_gcm && ossl.init && ossl.ctrl && ossl.update && ossl.final;
}

// A Uint8Array argument's bytes; false (a TypeError thrown) when it is something else.
static int bytes_arg(napi_env env, napi_value v, unsigned char **data, size_t *length, const char *what) {
  napi_typedarray_type type;
  void *raw;
  if (napi_get_typedarray_info(env, v, &type, length, &raw, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, what);
    return 0;
  }
  *data = raw;
  return 1;
}

// gcm(encrypt, key(32), iv(12), ad (or null), data, tag(16)): AES-256-GCM of `data` in place. Encrypting
// writes the tag into `tag`; decrypting checks it and returns false when the data does not authenticate
// (`data` then holds garbage). True otherwise.
static napi_value gcm(napi_env env, napi_callback_info info) {
  napi_value argv[6], result;
  if (!get_args(env, info, 6, argv, "gcm takes 6 arguments")) return NULL;
  bool encrypt;
  unsigned char *key, *iv, *ad = NULL, *data, *tag;
  size_t key_len, iv_len, ad_len = 0, data_len, tag_len;
  napi_valuetype ad_type;
  CHECK(napi_get_value_bool(env, argv[0], &encrypt));
  if (!bytes_arg(env, argv[1], &key, &key_len, "key must be a Uint8Array") || !bytes_arg(env, argv[2], &iv, &iv_len, "iv must be a Uint8Array")) return NULL;
  CHECK(napi_typeof(env, argv[3], &ad_type));
  if (ad_type != napi_null && ad_type != napi_undefined && !bytes_arg(env, argv[3], &ad, &ad_len, "ad must be a Uint8Array or null")) return NULL;
  if (!bytes_arg(env, argv[4], &data, &data_len, "data must be a Uint8Array") || !bytes_arg(env, argv[5], &tag, &tag_len, "tag must be a Uint8Array")) return NULL;
  if (key_len != 32 || iv_len != 12 || tag_len != 16 || data_len > INT_MAX || ad_len > INT_MAX) {
    napi_throw_range_error(env, NULL, "gcm: the key must be 32 bytes, the iv 12, the tag 16");
    return NULL;
  }
  EVP_CIPHER_CTX *ctx = ossl.ctx_new();
  if (!ctx) {
    napi_throw_error(env, NULL, "gcm: out of memory");
    return NULL;
  }
  int n, ok = ossl.init(ctx, ossl.aes_256_gcm(), NULL, key, iv, encrypt ? 1 : 0);
  if (ok && ad_len > 0) ok = ossl.update(ctx, NULL, &n, ad, (int)ad_len);
  if (ok && data_len > 0) ok = ossl.update(ctx, data, &n, data, (int)data_len);
  if (ok && !encrypt) ok = ossl.ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag);
  // GCM is a stream mode: final writes no bytes, it only computes or checks the tag.
  if (ok) ok = ossl.final(ctx, data + data_len, &n) > 0;
  if (ok && encrypt) ok = ossl.ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
  ossl.ctx_free(ctx);
  if (!ok && encrypt) {
    napi_throw_error(env, NULL, "gcm: encryption failed");
    return NULL;
  }
  CHECK(napi_get_boolean(env, ok != 0, &result));
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"gearCut", NULL, gear_cut, NULL, NULL, NULL, napi_enumerable, NULL},
      {"statInto", NULL, stat_into, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scanDir", NULL, scan_dir, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  pthread_once(&ossl_once, ossl_resolve);
  if (ossl.ok) {
    napi_property_descriptor g = {"gcm", NULL, gcm, NULL, NULL, NULL, napi_enumerable, NULL};
    CHECK(napi_define_properties(env, exports, 1, &g));
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
