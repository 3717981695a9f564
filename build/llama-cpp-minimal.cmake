# Included by llama.cpp's project() call (CMAKE_PROJECT_llama.cpp_INCLUDE) when
# llama-cpp-python builds it: no libllama-common (and so no cpp-httplib). llama-cpp-python
# forces LLAMA_BUILD_COMMON on for its multimodal library (libmtmd), which we do not build
# (LLAVA_BUILD=OFF); its ctypes bindings use only libllama and ggml.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
