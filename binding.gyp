{
  "targets": [
    {
      "target_name": "userpci_native",
      "sources": ["native/userpci.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
