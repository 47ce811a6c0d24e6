// semask_pipeline_test: a command-line driver of semask_pipeline.h for tests/examples/test_cpp_pipeline.py,
// which compares every function with its Python reference (OpenCV, numpy, PyTorch) on the same data.
//
//   semask_pipeline_test size W H LONG SHORT            -> prints "W' H'"
//   semask_pipeline_test resize in.ppm W H out.ppm      (cv::resize INTER_LINEAR copy)
//   semask_pipeline_test normalize in.ppm out.f32       (planar float32 3 x H x W)
//   semask_pipeline_test argmax logits.f32 K h w H W out.i32
//   semask_pipeline_test nearest labels.i32 h w H W out.i32

#include "semask_pipeline.h"

#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

template <typename T>
std::vector<T> readRaw(std::string const& path, size_t count) {
    std::vector<T> v(count);
    std::ifstream f(path, std::ios::binary);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
    if (!f) throw std::runtime_error("cannot read " + std::to_string(count) + " values from " + path);
    return v;
}

template <typename T>
void writeRaw(std::string const& path, std::vector<T> const& v) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<char const*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
    if (!f) throw std::runtime_error("cannot write " + path);
}

int run(std::vector<std::string> const& a) {
    auto i = [&](size_t k) { return std::stoi(a.at(k)); };
    std::string const cmd = a.at(0);
    if (cmd == "size") {
        auto [w, h] = semask::keepRatioSize(i(1), i(2), i(3), i(4));
        std::cout << w << " " << h << "\n";
    } else if (cmd == "resize") {
        semask::writePpm(a.at(4), semask::resizeLinearCv(semask::readPpm(a.at(1)), i(2), i(3)));
    } else if (cmd == "normalize") {
        writeRaw(a.at(2), semask::normalizeChw(semask::readPpm(a.at(1))));
    } else if (cmd == "argmax") {
        int const K = i(2), h = i(3), w = i(4);
        auto logits = readRaw<float>(a.at(1), static_cast<size_t>(K) * h * w);
        writeRaw(a.at(7), semask::resizeArgmax(logits.data(), K, h, w, i(5), i(6)));
    } else if (cmd == "resize-kind") {
        std::cout << semask::sidecarResizeKind(a.at(1)) << "\n";
    } else if (cmd == "nearest") {
        int const h = i(2), w = i(3);
        auto labels = readRaw<int32_t>(a.at(1), static_cast<size_t>(h) * w);
        writeRaw(a.at(6), semask::resizeLabelsNearest(labels.data(), h, w, i(4), i(5)));
    } else {
        throw std::runtime_error("unknown command " + cmd);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(std::vector<std::string>(argv + 1, argv + argc));
    } catch (std::exception const& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
