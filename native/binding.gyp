{
  "targets": [
    {
      "target_name": "bulwark_native",
      "sources": ["bulwark_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
