"""The seed notebook's original pure-Python code, kept for equivalence tests and benchmarks only.

Everything between the ``fmt: off`` markers is the notebook's code
(``seed/000_a7f57b7c1349ef84.txt``) copied verbatim: the flood fill ``bfs``/``markGroups`` that
returns one ``CellLocation(nPixels, x, y, width, height)`` per 4-connected group of pixels
``> int(255 * 0.5)`` in raster order, the tiling ``EvenlySpacedPartitions`` (float positions,
columns outer, rows inner; it divides by zero when a side is <= the tile), the PIL crop of
``CropImage`` and the upscale-and-minimum-blend tail of ``applyModelToImage`` (its model call
removed, so that it takes the predictions as an argument). The only additions are PEP 8 aliases.

Do not use these functions in the product: they are slow (seconds per image) and fragile. The
vectorised equivalents live in :mod:`neuroseg.masks` and :mod:`neuroseg.tiling`.
"""

# ruff: noqa: E711, E501, B905

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from PIL import Image

__all__ = [
    "CellLocation",
    "CropImage",
    "CroppedImage",
    "EvenlySpacedPartitions",
    "Rect",
    "bfs",
    "crop_image",
    "evenly_spaced_partitions",
    "markGroups",
    "mark_groups",
    "stitchPredictions",
    "stitch_predictions",
]

# fmt: off
CellLocation = namedtuple("CellLocation", ["nPixels", "x", "y", "width", "height"])

def bfs(r, c, nRows, nCols, traversable, groupAssignments, groupIndex):
    frontier = [(r,c)]
    groupAssignments[r][c] = groupIndex
    while len(frontier) > 0:
        curRow, curCol = frontier.pop()
        nextNodes = [
            (curRow + 1, curCol),
            (curRow - 1, curCol),
            (curRow, curCol + 1),
            (curRow, curCol - 1)
        ]
        for nextRow, nextCol in nextNodes:
            withinRange = (
                nextRow >= 0 and nextRow < nRows and
                nextCol >= 0 and nextCol < nCols)
            unvisited = (
                withinRange and
                traversable[nextRow][nextCol] and
                groupAssignments[nextRow][nextCol] == None)
            if withinRange and unvisited:
                frontier.append((nextRow, nextCol))
                groupAssignments[nextRow][nextCol] = groupIndex
    #end of loop, all linked nodes have been marked with "groupIndex"
    return

#(imgArr:TNumeric[][]) => CellLocation[]
def markGroups(maskArr):
    threshold = int(255 * 0.5)
    #Native python list to speed up per-element indexing
    isCell = np.greater(maskArr, threshold).tolist()
    nRows, nCols = maskArr.shape
    group = [[None]*nCols for _ in range(nRows)]
    groupIdx = 0
    #flood fill & mark cell groups
    for r in range(nRows):
        for c in range(nCols):
            unvisitedGroup = isCell[r][c] and (group[r][c] == None)
            if unvisitedGroup:
                bfs(r,c, nRows, nCols, isCell, group, groupIdx) #flood fill one cluster
                groupIdx += 1 #Ensure group clusters are unique

    #Get size & bounding boxes
    nGroups = groupIdx
    sizeList = [0] * nGroups

    rightList = [0] * nGroups
    leftList = [nCols] * nGroups

    botList = [0] * nGroups
    topList = [nRows] * nGroups

    for r in range(nRows):
        for c in range(nCols):
            if group[r][c] != None:
                groupNo = group[r][c]
                sizeList[groupNo] += 1

                rightList[groupNo] = max(rightList[groupNo], c)
                leftList[groupNo] = min(leftList[groupNo], c)

                botList[groupNo] = max(botList[groupNo], r)
                topList[groupNo] = min(topList[groupNo], r)

    #pack into tuples
    cellLocList = []
    for groupNo in range(nGroups):
        size = sizeList[groupNo]
        x = leftList[groupNo]
        y = topList[groupNo]
        width = 1 + (rightList[groupNo] - x)
        height = 1 + (botList[groupNo] - y)
        cellLocList.append(CellLocation(size, x, y, width, height))

    return cellLocList


Rect = namedtuple("Rect", ["x", "y", "width" , "height"])

def EvenlySpacedPartitions(width, height, partitionLength, minOverlap):
    def minPartitions(dimLength):
        return math.ceil((dimLength - minOverlap) / (partitionLength - minOverlap))
    nRows = minPartitions(height)
    nCols = minPartitions(width)

    def getPartitionStartingPositions(dimLength, nPartitions):
        overlap = (dimLength - nPartitions * partitionLength) / (1- nPartitions)
        advance = partitionLength - overlap
        return [advance * i for i in range(nPartitions)]

    rowPositions = getPartitionStartingPositions(height, nRows)
    colPositions = getPartitionStartingPositions(width, nCols)
    partitions = []
    for colStart in colPositions: #x
        for rowStart in rowPositions: #y
            partitions.append(Rect(colStart, rowStart, partitionLength, partitionLength))
    return partitions


CroppedImage = namedtuple("CroppedImage", ["image", "mask", "sourceRect"])

def CropImage(pilImage, pilMask, partitions):
    croppedImages = []
    for partition in partitions:
        top, bot = (partition.y, partition.y + partition.height)
        left, right = (partition.x, partition.x + partition.width)
        croppedImg = pilImage.crop((left, top, right, bot))
        croppedMask = pilMask.crop((left, top, right, bot))
        croppedImages.append(CroppedImage(croppedImg, croppedMask, partition))
    return croppedImages


#applyModelToImage after `predictions = model.predict(np.array(subImages))`
def stitchPredictions(predictions, partitions, width, height):
    predictionsUpscaled = []
    for pred in predictions:
        img = Image.fromarray(np.uint8(pred.reshape((50,50)) * 255))
        upscaled = np.array(img.resize((400,400)), dtype=np.uint8)
        predictionsUpscaled.append(upscaled)

    #Combine predictions into a single image
    #Use a "minimum" blending function, i.e. be as conservative as positive for cell predictions
    output = np.full((height, width), 255, dtype=np.uint8)
    for pred, location in zip(predictionsUpscaled, partitions):
        imgTop, imgBot = (round(location.y), round(location.y + location.height))
        imgLeft, imgRight = (round(location.x), round(location.x + location.width))
        output[imgTop:imgBot,imgLeft:imgRight] = np.minimum(output[imgTop:imgBot,imgLeft:imgRight], pred)

    return output
# fmt: on

# PEP 8 aliases (same objects).
mark_groups = markGroups
evenly_spaced_partitions = EvenlySpacedPartitions
crop_image = CropImage
stitch_predictions = stitchPredictions
